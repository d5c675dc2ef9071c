//! Header updates and committing metadata through the log.

use alloc::vec::Vec;

use super::{Disk, Image};
use crate::error::{Error, IoContext, Result};
use crate::format::guid::Guid;
use crate::format::header::HeaderInfo;
use crate::format::{round_up_mib, MIB};
use crate::io::Storage;
use crate::log::LogWriter;

impl Image {
    pub(crate) fn new_guid(&mut self) -> Result<Guid> {
        self.session.new_guid()
    }

    /// Writes a header changed by `f` to both slots, in order, each flushed.
    pub(crate) fn update_header(&mut self, f: impl FnOnce(&mut HeaderInfo)) -> Result<()> {
        self.header.update(&mut *self.storage, f)
    }

    /// Before the first change a reader can see: new FileWriteGuid (if this
    /// session has not changed it yet) and new DataWriteGuid.
    pub(crate) fn begin_data_change(&mut self) -> Result<()> {
        if self.session.data_guid_changed {
            return Ok(());
        }
        let data = match self.session.next_data_write_guid.take() {
            Some(planned) => planned,
            None => self.new_guid()?,
        };
        let file = if self.session.file_guid_changed { self.header.file_write_guid } else { self.new_guid()? };
        self.update_header(|h| {
            h.file_write_guid = file;
            h.data_write_guid = data;
        })?;
        self.session.file_guid_changed = true;
        self.session.data_guid_changed = true;
        Ok(())
    }

    /// See [`Disk::has_pending_metadata`].
    pub(crate) fn has_pending_metadata(&self) -> bool {
        #[cfg(feature = "std")]
        if self.shared_bits.has_dirty() {
            return true;
        }
        self.table.has_dirty() || !self.dirty_pages.is_empty()
    }

    /// Commits pending metadata: payload durable first, then the changed
    /// pages through the log, then in place.
    pub(crate) fn commit_metadata(&mut self) -> Result<()> {
        self.absorb_shared_bits();
        if !self.has_pending_metadata() {
            return Ok(());
        }
        self.storage.flush().during("flushing payload", 0)?;
        if self.log.get_mut().is_none() {
            if self.header.log_length == 0 {
                return Err(Error::unsupported(
                    "header",
                    0,
                    "the image has no log, so its metadata cannot be updated safely",
                ));
            }
            *self.log.get_mut() = Some(LogWriter::new(self.header.log_offset, self.header.log_length as u64));
        }
        // The header names a fresh LogGuid only once the first entry carrying
        // it is durable: a crash in between leaves a clean header and an
        // unapplied entry nobody replays, never a header naming an empty log.
        let mut pending_header = None;
        if self.header.log_guid.is_nil() {
            let mut h = HeaderInfo::clone(&self.header);
            h.log_guid = self.new_guid()?;
            pending_header = Some(h);
        }
        let mut pages: Vec<(u64, Vec<u8>)> = Vec::with_capacity(self.table.dirty_count() + self.dirty_pages.len());
        // Metadata and bitmap pages first: a commit split over several log
        // entries then never exposes blocks under a stale locator.
        for (&at, page) in &self.dirty_pages {
            pages.push((at, page.clone()));
        }
        pages.extend(self.table.dirty_pages());
        allocate_pages(&mut *self.storage, self.space.len(), &pages)?;
        let flushed = self.space.len() / MIB * MIB;
        let last = round_up_mib(self.space.len());
        let log_guid = pending_header.as_ref().map_or(self.header.log_guid, |h| h.log_guid);
        let headers = &mut self.header;
        let log = self.log.get_mut().as_mut().expect("set above");
        log.commit(&mut *self.storage, &log_guid, &pages, flushed, last, &mut |storage| match pending_header.take() {
            Some(h) => headers.write(storage, h),
            None => Ok(()),
        })?;
        self.table.clear_dirty();
        self.dirty_pages.clear();
        self.bitmap_cache.reset(self.table.geometry());
        Ok(())
    }

    /// See [`Disk::flush`].
    pub(crate) fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.commit_metadata()?;
        self.storage.flush().during("flushing", 0)
    }

    /// See [`Disk::checkpoint`].
    pub(crate) fn checkpoint(&mut self) -> Result<()> {
        if self.closed || !self.writable {
            return Ok(());
        }
        self.flush()?;
        if self.log.get_mut().is_some() {
            self.update_header(|h| h.log_guid = Guid::nil())?;
            *self.log.get_mut() = None;
        }
        Ok(())
    }

    pub(crate) fn close_inner(&mut self) -> Result<()> {
        self.checkpoint()?;
        self.closed = true;
        Ok(())
    }

    /// See [`Disk::log_entries_written`].
    pub(crate) fn log_entries_written(&self) -> u64 {
        self.log.read(|l| l.as_ref().map_or(0, |l| l.entries_written()))
    }
}

/// Backs every page a commit will apply in place with real space (a page of
/// a sparse BAT region may be a hole), before the log entry naming it is
/// written: a full filesystem then fails the commit with nothing logged,
/// never between logging and applying. `file_len` is the file's length.
fn allocate_pages(storage: &mut dyn Storage, file_len: u64, pages: &[(u64, Vec<u8>)]) -> Result<()> {
    let mut offsets: Vec<u64> = pages.iter().map(|(at, _)| *at).collect();
    offsets.sort_unstable();
    let mut i = 0;
    while i < offsets.len() {
        let start = offsets[i];
        let mut end = start + 4096;
        i += 1;
        while i < offsets.len() && offsets[i] <= end {
            end = end.max(offsets[i] + 4096);
            i += 1;
        }
        // A page past the end (of a region the log extends the file for)
        // needs no space now: the file is extended with zeros first.
        let end = end.min(file_len);
        if end > start {
            storage.allocate(start, end - start).during("allocating space for metadata", start)?;
        }
    }
    Ok(())
}

impl Disk {
    /// Makes every completed write durable: payload, then metadata through the log.
    pub fn flush(&mut self) -> Result<()> {
        self.image.flush()
    }

    /// [`Disk::flush`] through a shared reference, while readers and writers
    /// run: the payload made durable, then the block-table and sector
    /// bitmap pages that [`Disk::reserve_shared`] and
    /// [`Disk::commit_write_shared`] changed committed through the log, as
    /// a flush commits them. Returns `Ok(true)` when done (every write that
    /// completed before the call is durable); `Ok(false)` when only
    /// [`Disk::flush`] can: metadata changed through `&mut` since the last
    /// flush, the session's first commit (it names a fresh log in the
    /// headers), or storage without shared flushes, writes and allocation.
    ///
    /// Writers making new blocks wait for it (they take turns on the same
    /// lock); readers, and writers into stored blocks, do not. Share a disk
    /// as `RwLock<Disk>` and flush with
    /// [`flush_concurrently`](crate::flush_concurrently).
    #[cfg(feature = "std")]
    pub fn flush_shared(&self) -> Result<bool> {
        let image = &self.image;
        if !image.writable {
            return Ok(true);
        }
        if image.closed || image.table.has_exclusive_dirty() || !image.dirty_pages.is_empty() {
            return Ok(false);
        }
        let _turn = image.allocating.lock().unwrap_or_else(|e| e.into_inner());
        let pages = image.table.shared_pages();
        // Bitmap pages first, as in every commit.
        let bitmaps = image.shared_bits.dirty_pages();
        let log_guid = image.header.log_guid;
        if (!pages.is_empty() || !bitmaps.is_empty()) && log_guid.is_nil() {
            return Ok(false);
        }
        match image.storage.flush_shared() {
            None => return Ok(false),
            Some(done) => done.during("flushing payload", 0)?,
        }
        if pages.is_empty() && bitmaps.is_empty() {
            return Ok(true);
        }
        let mut log = image.log.lock();
        let Some(log) = log.as_mut() else { return Ok(false) };
        let numbers: Vec<u64> = pages.iter().map(|p| p.0).collect();
        let bitmap_count = bitmaps.len();
        let mut all = bitmaps;
        all.extend(pages.into_iter().map(|(_, at, bytes)| (at, bytes)));
        let len = image.space.len();
        let mut io = crate::io::SharedIo(&*image.storage);
        allocate_pages(&mut io, len, &all)?;
        log.commit(&mut io, &log_guid, &all, len / MIB * MIB, round_up_mib(len), &mut |_| Ok(()))?;
        image.table.shared_committed(&numbers);
        image.shared_bits.committed(&all[..bitmap_count]);
        Ok(true)
    }

    /// Flushes, then marks the log as needing no replay (clears the header's
    /// LogGuid) while the disk stays open: the file is then what
    /// [`Disk::close`] leaves, until the next metadata change starts a fresh
    /// log. A long-lived writer such as the NBD server calls it when a client
    /// goes away, so that a process killed while idle leaves an image every
    /// reader (QEMU included) opens without a log replay.
    ///
    /// ```
    /// use vhdx::{CreateOptions, Disk, MemStorage};
    /// # fn main() -> vhdx::Result<()> {
    /// let mut disk = Disk::create_on(Box::new(MemStorage::new()), &CreateOptions::dynamic(8 << 20), None)?;
    /// disk.write_at(b"data", 0)?;
    /// disk.checkpoint()?; // durable, and the log is clean
    /// disk.write_at(b"more", 4096)?; // still writable
    /// disk.close()?;
    /// # Ok(()) }
    /// ```
    pub fn checkpoint(&mut self) -> Result<()> {
        self.image.checkpoint()
    }

    /// Whether metadata changes wait for the next flush.
    pub fn has_pending_metadata(&self) -> bool {
        self.image.has_pending_metadata()
    }

    /// Log entries this session has written.
    pub fn log_entries_written(&self) -> u64 {
        self.image.log_entries_written()
    }
}
