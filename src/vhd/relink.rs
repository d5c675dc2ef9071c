//! Changing what a VHD links to, and emptying one, in an order a crash
//! cannot break.
//!
//! A dynamic header is 1024 bytes, two sectors: rewritten in place, a crash
//! could leave one sector old and one new, and a header whose checksum no
//! longer matches (the format keeps no second copy). So a new parent is
//! never written over the old header. The new header and its locators go to
//! the end of the file, where the next block would go, and the footer —
//! one sector, written whole or not at all — switches to them:
//!
//! 1. the footer, unchanged, moves past the space the new header takes (as
//!    an allocation moves it);
//! 2. the new header and its locators are written there, and flushed;
//! 3. the trailing footer, now naming the new header, is written and
//!    flushed; then the footer copy at offset 0.
//!
//! A crash before 3 leaves the old header named by both footers (a damaged
//! trailing footer falls back to the copy, as after an allocation); after
//! the trailing footer, the trailing footer names the new header. A crash
//! between the two footers leaves the copy at offset 0 naming the old
//! header, which is still whole: the next writable open puts the copy back
//! in line with the trailing footer. The old header and locators stay where
//! they were, unused (about 1.5 KiB per change of parent).
//!
//! Emptying a differencing disk (what a merge does to the images it merged)
//! marks every block unused, a sector of the block table at a time — each
//! entry alone reads through to the parent, which holds the same data by
//! then — and only then moves the footer back to the end of the structures
//! and cuts the file there.

use alloc::string::String;
use alloc::vec::Vec;

use super::{VhdDisk, VhdImage};
use crate::error::{Error, IoContext, Result};
use crate::format::guid::Guid;
use crate::format::vhd::{
    DynamicHeader, Footer, LocatorEntry, VhdType, DYNAMIC_HEADER_SIZE, FOOTER_SIZE, SECTOR, UNUSED_ENTRY,
};

impl VhdImage {
    /// Writes the footer at `at` and flushes.
    fn put_footer(&mut self, footer: &Footer, at: u64, what: &'static str) -> Result<()> {
        self.storage.write_all_at(&footer.to_bytes(), at).during(what, at)?;
        self.storage.flush().during("flushing the VHD footer", at)
    }

    /// Links this differencing disk to the disk whose footer is `parent`,
    /// named `parent_name`, through `locators`; with `new_id`, the disk
    /// takes that unique ID in the same footer write (its content changes,
    /// so its own children must not take it for what they were made on).
    fn relink(
        &mut self,
        parent: &Footer,
        parent_name: &str,
        locators: &[([u8; 4], Vec<u8>)],
        new_id: Option<Guid>,
    ) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let old = match &self.header {
            Some(h) if self.footer.disk_type == VhdType::Differencing => h.clone(),
            _ => return Err(Error::invalid("only a differencing VHD links to a parent")),
        };
        self.flush()?;
        let header_at = self.footer_at;
        let mut at = header_at + DYNAMIC_HEADER_SIZE as u64;
        let mut placed = Vec::new();
        for (code, data) in locators {
            let space = (data.len() as u64).next_multiple_of(SECTOR).max(SECTOR);
            let length = u32::try_from(data.len()).map_err(|_| Error::invalid("a parent locator path is too long"))?;
            placed.push(LocatorEntry {
                platform_code: *code,
                data_space: space as u32,
                data_length: length,
                data_offset: at,
            });
            at += space;
        }
        let header = DynamicHeader {
            parent_unique_id: parent.unique_id,
            parent_timestamp: parent.timestamp,
            parent_name: String::from(parent_name),
            locators: placed.clone(),
            ..old
        };
        let header_bytes = header.to_bytes()?;
        let new_end = at;
        // 1. The footer, unchanged, past the new structures.
        let unchanged = self.footer.clone();
        self.storage.write_all_at(&unchanged.to_bytes(), new_end).during("moving the VHD footer", new_end)?;
        // 2. The new header and its locators, durable before anything names them.
        self.storage.write_all_at(&header_bytes, header_at).during("writing the VHD dynamic header", header_at)?;
        for (e, (_, data)) in placed.iter().zip(locators) {
            let mut padded = data.clone();
            padded.resize(e.data_space as usize, 0);
            self.storage.write_all_at(&padded, e.data_offset).during("writing a VHD parent locator", e.data_offset)?;
        }
        self.storage.flush().during("flushing the new VHD dynamic header", header_at)?;
        self.footer_at = new_end;
        self.len = self.len.max(new_end + FOOTER_SIZE as u64);
        // 3. The footers switch to it: the trailing one, then the copy.
        let mut footer = self.footer.clone();
        footer.data_offset = header_at;
        if let Some(id) = new_id {
            footer.unique_id = id;
        }
        self.put_footer(&footer, new_end, "writing the VHD footer")?;
        self.footer = footer.clone();
        self.header = Some(header);
        self.put_footer(&footer, 0, "writing the VHD footer copy")
    }

    /// Marks every block unused and ends the file after its structures.
    fn clear_blocks(&mut self) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let Some(header) = self.header.clone() else {
            return Err(Error::invalid("a fixed VHD has no blocks to release"));
        };
        self.flush()?;
        if self.bat.iter().any(|&e| e != UNUSED_ENTRY) {
            let table = alloc::vec![0xFFu8; self.bat.len() * 4];
            let at = header.table_offset;
            self.storage.write_all_at(&table, at).during("clearing the VHD block allocation table", at)?;
            self.storage.flush().during("flushing the VHD block allocation table", at)?;
            self.bat.iter_mut().for_each(|e| *e = UNUSED_ENTRY);
        }
        // The footer goes back to the end of the structures, then the file
        // is cut after it: until the cut, the old trailing footer (the same
        // bytes) still ends the file.
        let mut end = self.footer.data_offset + DYNAMIC_HEADER_SIZE as u64;
        end = end.max(header.table_offset + self.bat.len() as u64 * 4);
        for e in &header.locators {
            end = end.max(e.data_offset + e.data_space.max(e.data_length) as u64);
        }
        let end = end.max(FOOTER_SIZE as u64).next_multiple_of(SECTOR);
        if end < self.footer_at {
            let footer = self.footer.clone();
            self.put_footer(&footer, end, "moving the VHD footer")?;
            let new_len = end + FOOTER_SIZE as u64;
            self.storage.set_len(new_len).during("shortening the emptied VHD", new_len)?;
            self.storage.flush().during("flushing the shortened VHD", new_len)?;
            self.footer_at = end;
            self.len = new_len;
        }
        Ok(())
    }
}

impl VhdDisk {
    /// Links this differencing disk (open writable) to the disk whose footer
    /// is `parent`, in the crash-safe order of the [module docs](self);
    /// `new_id` changes its own unique ID in the same step.
    pub(crate) fn relink(
        &mut self,
        parent: &Footer,
        parent_name: &str,
        locators: &[([u8; 4], Vec<u8>)],
        new_id: Option<Guid>,
    ) -> Result<()> {
        self.image.relink(parent, parent_name, locators, new_id)
    }

    /// Releases every block of this dynamic or differencing disk (open
    /// writable): it then presents zeros, or its parent.
    pub(crate) fn clear_blocks(&mut self) -> Result<()> {
        self.image.clear_blocks()
    }
}
