//! Metadata-only changes to a differencing disk: rewriting its parent
//! locator, emptying it, and writes that keep its presented content (and
//! so its DataWriteGuid) unchanged.
//!
//! All of them go through the log like every metadata change; the metadata
//! pages are committed before the BAT pages, so a crash part-way through
//! emptying a child that was merged leaves blocks whose data its new parent
//! already presents.

// Merge and re-linking (ops, std) are the callers of most of these.
#![cfg_attr(not(feature = "std"), allow(dead_code))]

use alloc::vec::Vec;

use super::Disk;
use crate::error::{Error, Result};
use crate::format::guid::Guid;
use crate::format::locator::ParentLocator;
use crate::format::metadata::build_region;

impl Disk {
    /// The disk's *change set*: the virtual ranges it determines itself,
    /// rather than its parent.
    ///
    /// Units: `(offset, length)` pairs in **bytes** of the virtual disk,
    /// sorted, disjoint and coalesced (two ranges never touch); each starts
    /// and ends on a logical sector boundary, so `offset /
    /// logical_sector_size()` is the first sector and `length /
    /// logical_sector_size()` the number of sectors.
    ///
    /// For a differencing disk this is read from the BAT and the sector
    /// bitmaps, sector by sector: every sector of a fully present block,
    /// every sector whose bitmap bit is set in a partially present block,
    /// and every sector of a block in a state that reads as zeros instead of
    /// the parent (ZERO, UNMAPPED, UNDEFINED). For a fixed or dynamic disk it
    /// is the whole disk. Writes not yet flushed count.
    ///
    /// ```no_run
    /// let child = vhdx::OpenOptions::new().without_parent().open("child.vhdx")?;
    /// let sector = child.logical_sector_size() as u64;
    /// for (offset, length) in child.change_set()? {
    ///     println!("sectors {}..{} are the child's own", offset / sector, (offset + length) / sector);
    /// }
    /// # Ok::<(), vhdx::Error>(())
    /// ```
    pub fn change_set(&self) -> Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        self.resolve(0, self.params.virtual_size, |at, n, extent| {
            if extent != super::Extent::Parent {
                match out.last_mut() {
                    Some((s, l)) if *s + *l == at => *l += n,
                    _ => out.push((at, n)),
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Starts a session that changes metadata only: a new FileWriteGuid.
    pub(crate) fn begin_metadata_change(&mut self) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if self.file_guid_changed {
            return Ok(());
        }
        let fwg = self.new_guid()?;
        self.update_header(|h| h.file_write_guid = fwg)?;
        self.file_guid_changed = true;
        Ok(())
    }

    /// Promises that the following writes do not change what the disk
    /// presents (they copy in the parent's own data), so the DataWriteGuid —
    /// and with it the linkage of this disk's children — stays.
    pub(crate) fn keep_data_write_guid(&mut self) -> Result<()> {
        self.begin_metadata_change()?;
        self.data_guid_changed = true;
        Ok(())
    }

    /// Chooses the DataWriteGuid the next change of content takes (instead
    /// of a fresh one), so that children can be told it before the change:
    /// a child whose `parent_linkage2` names it keeps opening whether or not
    /// the change happened. Refused once this session changed the content.
    pub(crate) fn plan_data_write_guid(&mut self, guid: Guid) -> Result<()> {
        if self.data_guid_changed {
            return Err(Error::invalid("the DataWriteGuid of this session is already chosen"));
        }
        self.next_data_write_guid = Some(guid);
        Ok(())
    }

    /// Replaces the parent locator (metadata through the log at the next flush).
    pub(crate) fn set_parent_locator(&mut self, locator: ParentLocator) -> Result<()> {
        if !self.params.has_parent {
            return Err(Error::invalid("only a differencing disk has a parent locator"));
        }
        let region = self.regions.metadata();
        let mut current = alloc::vec![0u8; region.length as usize];
        self.read_file(&mut current, region.file_offset, "reading the metadata region")?;
        let new = build_region(&self.params, Some(&locator), region.length as usize)?;
        for (i, (old, new)) in current.chunks(4096).zip(new.chunks(4096)).enumerate() {
            if old != new {
                self.dirty_pages.insert(region.file_offset + i as u64 * 4096, new.to_vec());
            }
        }
        self.locator = Some(locator);
        Ok(())
    }

    /// Empties a differencing disk and points it at a new parent in one
    /// crash-safe step, then gives back the space of its blocks.
    /// `content_changes` says whether what the disk presents changes (then the
    /// DataWriteGuid changes too).
    pub(crate) fn empty_and_relink(&mut self, locator: ParentLocator, content_changes: bool) -> Result<()> {
        if content_changes {
            self.begin_data_change()?;
        } else {
            self.begin_metadata_change()?;
        }
        self.set_parent_locator(locator)?;
        for index in 0..self.geometry.entry_count as usize {
            if self.bat[index] != 0 {
                self.set_bat_entry(index, 0);
            }
        }
        let mut end = crate::format::HEADER_SECTION_SIZE.max(self.header.log_offset + self.header.log_length as u64);
        for r in &self.regions.entries {
            end = end.max(r.end());
        }
        // Log the smaller size first, then shrink.
        self.file_len = end;
        self.flush()?;
        self.storage.set_len(end).map_err(|source| Error::Io {
            op: "shrinking the emptied file",
            offset: end,
            source,
        })?;
        self.storage.flush().map_err(|source| Error::Io { op: "flushing", offset: end, source })?;
        self.alloc_floor = end;
        Ok(())
    }

    /// Queues both region table copies, rebuilt from the validated table,
    /// for the next commit.
    pub(crate) fn queue_region_tables(&mut self) {
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
    pub(crate) fn clean_bat_reserved(&mut self) -> Result<(u64, Vec<alloc::string::String>)> {
        use crate::format::bat::{PayloadState, OFFSET_MASK, STATE_MASK};
        let g = self.geometry;
        let (mut bits, mut offsets, mut bitmaps) = (0u64, 0u64, 0u64);
        for index in 0..g.entry_count as usize {
            let e = self.bat[index];
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
                if !self.file_guid_changed {
                    self.begin_metadata_change()?;
                }
                self.set_bat_entry(index, clean);
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

    /// Points a differencing disk at another parent (metadata only) and
    /// commits; the DataWriteGuid changes when `content_changes`.
    pub(crate) fn relink(&mut self, locator: ParentLocator, content_changes: bool) -> Result<()> {
        if content_changes {
            self.begin_data_change()?;
        } else {
            self.begin_metadata_change()?;
        }
        self.set_parent_locator(locator)?;
        self.flush()
    }
}
