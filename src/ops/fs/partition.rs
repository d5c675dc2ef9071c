//! Partition tables: GPT (the header at LBA 1 and its entry array, each
//! checked by its CRC-32) and MBR (four primary entries, and logical
//! partitions along the extended partition's chain). Read through any
//! [`BlockDevice`], a bounded number of sectors: every count and offset is
//! checked against the disk before it sizes a read.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::BlockDevice;

/// The most GPT entries read (the specification's minimum array is 128).
const MAX_GPT_ENTRIES: u32 = 4096;
/// The most logical partitions followed along an extended chain.
const MAX_LOGICAL: usize = 256;

/// Which kind of table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableKind {
    /// GUID partition table (behind a protective MBR).
    Gpt,
    /// Master boot record.
    Mbr,
    /// No table: the disk is one filesystem, or nothing known.
    None,
    /// A table that cannot be trusted (a checksum, an entry out of bounds,
    /// overlapping partitions): nothing on the disk counts as free.
    Damaged,
}

impl TableKind {
    /// `"gpt"`, `"mbr"`, `"none"` or `"damaged"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Gpt => "gpt",
            TableKind::Mbr => "mbr",
            TableKind::None => "none",
            TableKind::Damaged => "damaged",
        }
    }
}

/// One partition (or, with no table, the whole disk).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Partition {
    /// 1-based, in table order (logical MBR partitions from 5); 0 for the
    /// whole disk without a table.
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// The type: a GPT type GUID, or an MBR type byte as `0x83`.
    pub type_id: String,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Layout {
    /// Which table.
    pub table: TableKind,
    /// Its partitions, by start.
    pub partitions: Vec<Partition>,
    /// The table's own structures outside every partition, as byte ranges:
    /// the MBR, GPT header and entries (and their backup at the end of the
    /// disk), each extended partition (the container of the logical ones,
    /// its boot records included).
    pub structures: Vec<(u64, u64)>,
}

fn read(dev: &dyn BlockDevice, at: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, at)?;
    Ok(buf)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A GUID as GPT stores it (mixed-endian), in its usual text form.
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Reads the partition table of `dev`. A disk whose first sector holds no
/// MBR signature has no table ([`TableKind::None`], one whole-disk
/// partition); a table that is damaged — a GPT whose checksums do not
/// match, entries past the end of the disk, overlapping partitions, a
/// looping extended chain — is an error naming the structure and offset,
/// so that nothing is released on the strength of it.
pub fn read_layout(dev: &dyn BlockDevice) -> Result<Layout> {
    let size = dev.capacity();
    let sector = dev.sector_size() as u64;
    if size < 2 * sector.max(512) {
        return Ok(whole(size));
    }
    let mbr = read(dev, 0, 512)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return Ok(whole(size));
    }
    // A filesystem's boot sector (FAT, NTFS, exFAT on a disk without a
    // table) also ends in 55 AA, with boot code where an MBR's entries
    // would be: taken for a table, its "partitions" would leave the whole
    // filesystem outside them.
    if super::fat::is_boot_sector(&mbr) || &mbr[3..11] == b"NTFS    " || &mbr[3..11] == b"EXFAT   " {
        return Ok(whole(size));
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)]).collect();
    // An MBR's entries have a status byte of 0x00 or 0x80; and a table
    // with no entry in use describes nothing.
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) || entries.iter().all(|e| e[4] == 0) {
        return Ok(whole(size));
    }
    let mut layout = if entries.iter().any(|e| e[4] == 0xEE) {
        read_gpt(dev, size, sector)?
    } else {
        read_mbr(dev, &entries, size)?
    };
    layout.structures.push((0, 512));
    layout.partitions.sort_by_key(|p| p.start);
    for pair in layout.partitions.windows(2) {
        if pair[0].start + pair[0].length > pair[1].start {
            return Err(Error::corrupt(
                "partition table",
                0,
                format!("partitions {} and {} overlap", pair[0].number, pair[1].number),
            ));
        }
    }
    Ok(layout)
}

fn whole(size: u64) -> Layout {
    Layout {
        table: TableKind::None,
        partitions: vec![Partition { number: 0, start: 0, length: size, type_id: String::new() }],
        structures: Vec::new(),
    }
}

fn checked(number: u32, start: u64, length: u64, size: u64, what: &'static str, at: u64) -> Result<Partition> {
    if start.checked_add(length).is_none_or(|end| end > size) {
        return Err(Error::corrupt(
            what,
            at,
            format!("partition {number} ({length} bytes at {start}) does not lie inside the {size}-byte disk"),
        ));
    }
    Ok(Partition { number, start, length, type_id: String::new() })
}

fn read_mbr(dev: &dyn BlockDevice, entries: &[&[u8]], size: u64) -> Result<Layout> {
    let mut partitions = Vec::new();
    let mut structures = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        let (lba, count) = (le32(e, 8) as u64, le32(e, 12) as u64);
        if kind == 0 || count == 0 {
            continue;
        }
        let at = 446 + 16 * i as u64;
        if matches!(kind, 0x05 | 0x0F | 0x85) {
            let ext = checked(i as u32 + 1, lba * 512, count * 512, size, "MBR partition entry", at)?;
            // The container itself: kept, and where a shrink must stop.
            structures.push((ext.start, ext.length));
            read_logical(dev, &ext, size, &mut partitions, &mut structures)?;
            continue;
        }
        let mut p = checked(i as u32 + 1, lba * 512, count * 512, size, "MBR partition entry", at)?;
        p.type_id = format!("{kind:#04x}");
        partitions.push(p);
    }
    Ok(Layout { table: TableKind::Mbr, partitions, structures })
}

/// The logical partitions along the extended partition `ext`: each EBR
/// gives one partition (relative to itself) and the next EBR (relative to
/// the extended partition's start).
fn read_logical(
    dev: &dyn BlockDevice,
    ext: &Partition,
    size: u64,
    out: &mut Vec<Partition>,
    structures: &mut Vec<(u64, u64)>,
) -> Result<()> {
    let mut ebr_at = ext.start;
    let mut seen = Vec::new();
    for n in 0..MAX_LOGICAL {
        if seen.contains(&ebr_at) {
            return Err(Error::corrupt("extended boot record", ebr_at, "the chain of logical partitions loops"));
        }
        seen.push(ebr_at);
        let ebr = read(dev, ebr_at, 512)?;
        if ebr[510] != 0x55 || ebr[511] != 0xAA {
            return Err(Error::corrupt("extended boot record", ebr_at, "no 55 AA signature"));
        }
        structures.push((ebr_at, 512));
        let (first, next) = (&ebr[446..462], &ebr[462..478]);
        if first[4] != 0 && le32(first, 12) != 0 {
            let start = ebr_at + le32(first, 8) as u64 * 512;
            let mut p =
                checked(5 + n as u32, start, le32(first, 12) as u64 * 512, size, "extended boot record", ebr_at)?;
            if p.start < ext.start || p.start + p.length > ext.start + ext.length {
                return Err(Error::corrupt(
                    "extended boot record",
                    ebr_at,
                    format!("logical partition {} lies outside its extended partition", p.number),
                ));
            }
            p.type_id = format!("{:#04x}", first[4]);
            out.push(p);
        }
        if next[4] == 0 || le32(next, 12) == 0 {
            return Ok(());
        }
        ebr_at = ext.start + le32(next, 8) as u64 * 512;
        if ebr_at >= ext.start + ext.length {
            return Err(Error::corrupt(
                "extended boot record",
                ebr_at,
                "the next record lies outside the extended partition",
            ));
        }
    }
    Err(Error::corrupt("extended boot record", ext.start, format!("more than {MAX_LOGICAL} logical partitions")))
}

fn read_gpt(dev: &dyn BlockDevice, size: u64, sector: u64) -> Result<Layout> {
    // The header is at LBA 1 of the disk's logical sector size.
    let at = sector;
    let header = read(dev, at, 512)?;
    if &header[..8] != b"EFI PART" {
        return Err(Error::corrupt("GPT header", at, "a protective MBR, but no \"EFI PART\" header at LBA 1"));
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(Error::corrupt("GPT header", at, format!("header size {header_size}")));
    }
    let mut copy = header[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != le32(&header, 16) {
        return Err(Error::corrupt("GPT header", at, "its CRC-32 does not match"));
    }
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84);
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(Error::corrupt("GPT header", at, format!("{count} entries of {entry_size} bytes")));
    }
    let array_len = count as u64 * entry_size as u64;
    let array_at = entries_lba.checked_mul(sector).filter(|&a| a.checked_add(array_len).is_some_and(|e| e <= size));
    let Some(array_at) = array_at else {
        return Err(Error::corrupt("GPT header", at, "the entry array does not lie inside the disk"));
    };
    let array = read(dev, array_at, array_len as usize)?;
    if crc32(&array) != le32(&header, 88) {
        return Err(Error::corrupt("GPT partition entries", array_at, "their CRC-32 does not match"));
    }
    let mut partitions = Vec::new();
    // The header and entries, and their backup (whose header LBA the
    // primary header gives) with the entries before it.
    let mut structures = alloc::vec![(at, sector.max(512)), (array_at, array_len)];
    let backup_at = le64(&header, 32).checked_mul(sector).filter(|&b| b < size);
    if let Some(b) = backup_at {
        let array_sectors = array_len.div_ceil(sector) * sector;
        let from = b.saturating_sub(array_sectors);
        structures.push((from, b + sector - from));
    }
    for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let entry_at = array_at + i as u64 * entry_size as u64;
        if last < first {
            return Err(Error::corrupt("GPT partition entry", entry_at, "its last LBA is before its first"));
        }
        let start = first.checked_mul(sector);
        let length = (last - first + 1).checked_mul(sector);
        let (Some(start), Some(length)) = (start, length) else {
            return Err(Error::corrupt("GPT partition entry", entry_at, "its LBAs overflow"));
        };
        let mut p = checked(i as u32 + 1, start, length, size, "GPT partition entry", entry_at)?;
        p.type_id = guid_text(&e[..16]);
        partitions.push(p);
    }
    Ok(Layout { table: TableKind::Gpt, partitions, structures })
}

/// The bytes the GPT's backup takes at the end of the disk: its entries and
/// its header.
pub(crate) fn gpt_backup_len(dev: &dyn BlockDevice) -> Result<u64> {
    let sector = dev.sector_size() as u64;
    let header = read(dev, sector, 512)?;
    let array = le32(&header, 80) as u64 * le32(&header, 84) as u64;
    Ok(array.div_ceil(sector) * sector + sector)
}

/// Moves the GPT's backup (entries and header) so that it ends at
/// `new_size`, the disk's size after a shrink, and points the primary
/// header (and the protective MBR) at it. The new backup is written and
/// flushed first, in space past every partition; then the primary header,
/// one sector, switches to it: a crash leaves the old backup named (still
/// whole, the disk not yet shrunk) or the new one.
pub(crate) fn move_gpt_backup(dev: &mut dyn BlockDevice, new_size: u64) -> Result<()> {
    let sector = dev.sector_size() as u64;
    let mut header = read(&*dev, sector, sector as usize)?;
    let header_size = le32(&header, 12) as usize;
    let entries_lba = le64(&header, 72);
    let array_len = le32(&header, 80) as u64 * le32(&header, 84) as u64;
    let array_sectors = array_len.div_ceil(sector);
    let last_usable = (new_size / sector).checked_sub(array_sectors + 2).filter(|&l| l >= le64(&header, 40));
    let Some(last_usable) = last_usable.filter(|_| (92..=512).contains(&header_size)) else {
        return Err(Error::invalid(format!("the GPT does not fit in {new_size} bytes")));
    };
    let backup_entries = last_usable + 1;
    let last_lba = backup_entries + array_sectors;
    // Nothing of a partition may lie where the backup goes, or past it.
    let layout = read_layout(&*dev)?;
    if let Some(p) = layout.partitions.iter().find(|p| p.start + p.length > (last_usable + 1) * sector) {
        return Err(Error::Refused(format!(
            "partition {} ends at byte {}, past where the GPT's backup would go at the new size of {new_size} \
             bytes; nothing was changed",
            p.number,
            p.start + p.length
        )));
    }
    let array = read(&*dev, entries_lba * sector, (array_sectors * sector) as usize)?;
    let seal = |h: &mut [u8]| {
        h[16..20].fill(0);
        let crc = crc32(&h[..header_size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    };
    let mut backup = header.clone();
    backup[24..32].copy_from_slice(&last_lba.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[48..56].copy_from_slice(&last_usable.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
    seal(&mut backup);
    dev.write_at(&array, backup_entries * sector)?;
    dev.write_at(&backup, last_lba * sector)?;
    dev.flush()?;
    header[32..40].copy_from_slice(&last_lba.to_le_bytes());
    header[48..56].copy_from_slice(&last_usable.to_le_bytes());
    seal(&mut header);
    dev.write_at(&header, sector)?;
    dev.flush()?;
    // The protective MBR's 0xEE entry covers LBA 1 to the last LBA.
    let mut mbr = read(&*dev, 0, 512)?;
    if let Some(i) = (0..4).find(|&i| mbr[446 + 16 * i + 4] == 0xEE) {
        let count = u32::try_from(last_lba).unwrap_or(u32::MAX);
        mbr[446 + 16 * i + 12..446 + 16 * i + 16].copy_from_slice(&count.to_le_bytes());
        dev.write_at(&mbr, 0)?;
        dev.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
