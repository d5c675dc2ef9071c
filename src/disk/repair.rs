//! Mending an opened image in place: what `check --repair` does once the
//! open has replayed the log. Each mend goes through the same log-backed
//! commit as every other metadata change.

use alloc::string::String;
use alloc::vec::Vec;

use super::Image;
use crate::error::Result;
use crate::format::bat::BatEntry;
use crate::format::region::{RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};

impl Image {
    /// Rewrites both headers when `headers_bad`, both region table copies
    /// when one on file differs from the table the open validated, and
    /// clears the BAT entries' reserved values; commits, and returns one
    /// line per mend.
    pub(crate) fn mend(&mut self, headers_bad: bool) -> Result<Vec<String>> {
        let mut actions = Vec::new();
        // Read now, not before the open: its replay may have changed them.
        let mut section = alloc::vec![0u8; REGION_TABLE_OFFSETS[1] as usize + REGION_TABLE_SIZE];
        self.read_file(&mut section, 0, "reading the header section")?;
        if headers_bad {
            // A new FileWriteGuid makes the next commit write both headers.
            self.begin_metadata_change()?;
            actions.push(String::from("rewrote both headers from the current one"));
        }
        let copies = REGION_TABLE_OFFSETS.map(|o| RegionTable::parse(&section[o as usize..], o));
        if copies.iter().any(|c| c.as_ref().ok() != Some(&self.regions)) {
            self.begin_metadata_change()?;
            self.queue_region_tables();
            actions.push(String::from("rewrote both region table copies from the valid one"));
        }
        let (fixed_entries, mut notes) = self.clean_bat_reserved()?;
        if fixed_entries > 0 {
            actions.append(&mut notes);
        }
        Ok(actions)
    }

    /// Queues both region table copies, rebuilt from the validated table,
    /// for the next commit.
    fn queue_region_tables(&mut self) {
        let table = self.regions.to_bytes();
        for at in crate::format::region::REGION_TABLE_OFFSETS {
            for (i, page) in table.chunks(4096).enumerate() {
                self.dirty_pages.insert(at + i as u64 * 4096, page.to_vec());
            }
        }
    }

    /// Clears what the format reserves in BAT entries: bits 3–19, offsets of
    /// NOT_PRESENT and ZERO payload entries, sector-bitmap entries of a disk
    /// without a parent. Commits through the log; returns how many entries
    /// changed and a description per kind.
    fn clean_bat_reserved(&mut self) -> Result<(u64, Vec<alloc::string::String>)> {
        use crate::format::bat::{PayloadState, OFFSET_MASK, STATE_MASK};
        // Works on the raw values: the reserved bits are what it clears.
        let g = *self.table.geometry();
        let (mut bits, mut offsets, mut bitmaps) = (0u64, 0u64, 0u64);
        for index in 0..g.entry_count as usize {
            let e = self.bat(index)?.raw();
            let mut clean = e & (OFFSET_MASK | STATE_MASK);
            if clean != e {
                bits += 1;
            }
            if g.is_sector_bitmap_index(index) {
                if !g.has_parent && clean != 0 {
                    clean = 0;
                    bitmaps += 1;
                }
            } else if matches!(PayloadState::from_entry(clean), Some(PayloadState::NotPresent | PayloadState::Zero))
                && clean & OFFSET_MASK != 0
            {
                clean &= STATE_MASK;
                offsets += 1;
            }
            if clean != e {
                if !self.session.file_guid_changed {
                    self.begin_metadata_change()?;
                }
                self.set_bat_entry(index, BatEntry::from_raw(clean))?;
            }
        }
        let mut notes = Vec::new();
        for (n, what) in [
            (bits, "BAT entries with reserved bits set"),
            (offsets, "NOT_PRESENT/ZERO BAT entries carrying an offset"),
            (bitmaps, "sector bitmap entries in a disk without a parent"),
        ] {
            if n > 0 {
                notes.push(alloc::format!("cleared {n} {what}"));
            }
        }
        self.flush()?;
        Ok((bits + offsets + bitmaps, notes))
    }
}
