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

use crate::format::bat::BatEntry;
use alloc::vec::Vec;

use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::guid::Guid;
use crate::format::locator::ParentLocator;
use crate::format::metadata::{build_region, extra_items, parse_table, ExtraItem, MetadataFlags, METADATA_TABLE_SIZE};

impl Image {
    /// Starts a session that changes metadata only: a new FileWriteGuid.
    pub(crate) fn begin_metadata_change(&mut self) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if self.session.file_guid_changed {
            return Ok(());
        }
        let fwg = self.new_guid()?;
        self.update_header(|h| h.file_write_guid = fwg)?;
        self.session.file_guid_changed = true;
        Ok(())
    }

    /// Promises that the following writes do not change what the disk
    /// presents (they copy in the parent's own data), so the DataWriteGuid —
    /// and with it the linkage of this disk's children — stays.
    pub(crate) fn keep_data_write_guid(&mut self) -> Result<()> {
        self.begin_metadata_change()?;
        self.session.data_guid_changed = true;
        Ok(())
    }

    /// Chooses the DataWriteGuid the next change of content takes (instead
    /// of a fresh one), so that children can be told it before the change:
    /// a child whose `parent_linkage2` names it keeps opening whether or not
    /// the change happened. Refused once this session changed the content.
    pub(crate) fn plan_data_write_guid(&mut self, guid: Guid) -> Result<()> {
        if self.session.data_guid_changed {
            return Err(Error::invalid("the DataWriteGuid of this session is already chosen"));
        }
        self.session.next_data_write_guid = Some(guid);
        Ok(())
    }

    /// Replaces the parent locator (metadata through the log at the next
    /// flush); every other item stays.
    pub(crate) fn set_parent_locator(&mut self, locator: ParentLocator) -> Result<()> {
        if !self.params.has_parent {
            return Err(Error::invalid("only a differencing disk has a parent locator"));
        }
        self.rewrite_metadata(Some(locator), None)
    }

    /// The metadata region as the next commit leaves it: the file's bytes
    /// with the pages changed in this session laid over them.
    fn metadata_region(&self) -> Result<(u64, Vec<u8>)> {
        let region = self.regions.metadata();
        let mut current = alloc::vec![0u8; region.length as usize];
        self.read_file(&mut current, region.file_offset, "reading the metadata region")?;
        for (&at, page) in self.dirty_pages.range(region.file_offset..region.end()) {
            let from = (at - region.file_offset) as usize;
            let n = page.len().min(current.len() - from);
            current[from..from + n].copy_from_slice(&page[..n]);
        }
        Ok((region.file_offset, current))
    }

    /// `len` bytes of the metadata region from `offset`, as the next commit
    /// leaves them (this session's changed pages laid over the file's bytes).
    fn read_metadata(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let region = self.regions.metadata();
        let at = region.file_offset + offset;
        let mut buf = alloc::vec![0u8; len];
        self.read_file(&mut buf, at, "reading the metadata region")?;
        let end = at + len as u64;
        for (&page, bytes) in self.dirty_pages.range(at.saturating_sub(4095)..end) {
            let (lo, hi) = (page.max(at), (page + bytes.len() as u64).min(end));
            if lo < hi {
                buf[(lo - at) as usize..(hi - at) as usize]
                    .copy_from_slice(&bytes[(lo - page) as usize..(hi - page) as usize]);
            }
        }
        Ok(buf)
    }

    /// The user metadata item `id` (with this session's changes), if the
    /// image has one. Reads the table and that item only.
    pub(crate) fn user_item(&self, id: Guid) -> Result<Option<Vec<u8>>> {
        let region = self.regions.metadata();
        let table = self.read_metadata(0, METADATA_TABLE_SIZE.min(region.length as usize))?;
        let entries = parse_table(&table, region.file_offset, region.length)?;
        match entries.iter().find(|e| e.item_id == id && e.flags.contains(MetadataFlags::IS_USER)) {
            Some(e) => self.read_metadata(e.offset as u64, e.length as usize).map(Some),
            None => Ok(None),
        }
    }

    /// Sets (`Some`) or removes (`None`) the user metadata item `id`
    /// (metadata through the log at the next flush). The item is optional:
    /// readers that do not know it ignore it.
    pub(crate) fn set_user_item(&mut self, id: Guid, data: Option<Vec<u8>>) -> Result<()> {
        self.begin_metadata_change()?;
        self.rewrite_metadata(None, Some((id, data)))
    }

    /// Rebuilds the metadata region with `locator` (when given) and the user
    /// item change (when given), carrying every other item over, and queues
    /// the pages that differ for the next commit.
    fn rewrite_metadata(
        &mut self,
        locator: Option<ParentLocator>,
        item: Option<(Guid, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let (at, current) = self.metadata_region()?;
        let entries = parse_table(&current, at, current.len() as u32)?;
        let mut extras =
            extra_items(&entries, |e| Ok(current[e.offset as usize..(e.offset + e.length) as usize].to_vec()))?;
        if let Some((id, data)) = item {
            let user = |x: &ExtraItem| x.item_id == id && x.flags.contains(MetadataFlags::IS_USER);
            match (extras.iter_mut().find(|x| user(x)), data) {
                (Some(x), Some(data)) => x.data = data,
                (None, Some(data)) => extras.push(ExtraItem { item_id: id, flags: MetadataFlags::IS_USER, data }),
                (_, None) => extras.retain(|x| !user(x)),
            }
        }
        let locator = locator.or_else(|| self.locator.clone());
        let new = build_region(&self.params, locator.as_ref(), &extras, current.len())?;
        let mut on_file = alloc::vec![0u8; current.len()];
        self.read_file(&mut on_file, at, "reading the metadata region")?;
        for (i, (old, new)) in on_file.chunks(4096).zip(new.chunks(4096)).enumerate() {
            let page = at + i as u64 * 4096;
            // A page changed earlier in this session is queued again even
            // when it now equals the file again.
            if old != new || self.dirty_pages.contains_key(&page) {
                self.dirty_pages.insert(page, new.to_vec());
            }
        }
        self.locator = locator;
        Ok(())
    }
}

impl Image {
    /// Empties a differencing disk and points it at a new parent (when
    /// `locator` is given) in one crash-safe step, then gives back the space
    /// of its blocks. `content_changes` says whether what the disk presents
    /// changes (then the DataWriteGuid changes too).
    pub(crate) fn empty_and_relink(&mut self, locator: Option<ParentLocator>, content_changes: bool) -> Result<()> {
        if content_changes {
            self.begin_data_change()?;
        } else {
            self.begin_metadata_change()?;
        }
        if let Some(locator) = locator {
            self.set_parent_locator(locator)?;
        }
        for index in 0..self.table.geometry().entry_count as usize {
            if !self.bat(index)?.is_empty() {
                self.set_bat_entry(index, BatEntry::EMPTY)?;
            }
        }
        let end = self.structures_end();
        // Log the smaller size first, then shrink.
        self.space.set_len(end);
        self.flush()?;
        self.storage.set_len(end).during("shrinking the emptied file", end)?;
        self.storage.flush().during("flushing", end)?;
        self.space.end_at(end);
        self.blocks_end = Some(end);
        Ok(())
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
        self.image.resolve(0, self.image.params.virtual_size, |at, n, extent| {
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
}

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::vec;

    use crate::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
    use crate::io::MemStorage;
    use crate::{CreateOptions, Disk, Guid, OpenOptions};

    fn guids() -> crate::GuidSource {
        let mut n = 0u128;
        Box::new(move || {
            n += 1;
            Guid::from_u128(n)
        })
    }

    #[test]
    fn user_items_survive_locator_rewrites_and_are_removed_on_request() {
        let parent =
            Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20), Some(guids())).unwrap();
        let mut loc = ParentLocator { entries: vec![] };
        loc.set(PARENT_LINKAGE, braced_guid(&parent.data_write_guid()));
        loc.set(RELATIVE_PATH, ".\\p.vhdx".into());
        let mut d = Disk::create_differencing_on(Box::new(MemStorage::new()), parent, loc.clone(), None, Some(guids()))
            .unwrap();
        let (a, b) = (Guid::from_u128(0xA), Guid::from_u128(0xB));
        d.image.set_user_item(a, Some(vec![1, 2, 3])).unwrap();
        assert_eq!(d.image.user_item(a).unwrap(), Some(vec![1, 2, 3]), "seen before the commit");
        d.flush().unwrap();
        d.image.set_user_item(b, Some(vec![9; 5000])).unwrap();
        loc.set(RELATIVE_PATH, ".\\elsewhere\\p.vhdx".into());
        d.image.relink(loc.clone(), false).unwrap();
        let storage = d.into_storage().unwrap();
        let mut d = OpenOptions::new().writable(true).without_parent().open_storage(storage).unwrap();
        assert_eq!(d.image.user_item(a).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(d.image.user_item(b).unwrap(), Some(vec![9; 5000]));
        assert_eq!(d.parent_locator().unwrap().get(RELATIVE_PATH), Some(".\\elsewhere\\p.vhdx"));
        d.image.set_user_item(a, Some(vec![7])).unwrap();
        d.image.set_user_item(b, None).unwrap();
        let storage = d.into_storage().unwrap();
        let d = OpenOptions::new().without_parent().open_storage(storage).unwrap();
        assert_eq!(d.image.user_item(a).unwrap(), Some(vec![7]));
        assert_eq!(d.image.user_item(b).unwrap(), None);
        assert_eq!(d.parent_locator(), Some(&loc));
    }
}
