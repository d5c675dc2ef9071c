//! Sector bitmap pages a differencing disk changes through `&self`, while
//! readers run ([`Disk::reserve_shared`](crate::Disk::reserve_shared),
//! [`Disk::commit_write_shared`](crate::Disk::commit_write_shared)).
//!
//! A writer that makes sectors present sets their bits in a whole 4 KiB copy
//! of the bitmap page held here, after the sectors' data is in the file.
//! Readers find the copy without a lock (an open-addressing table of page
//! offsets, filled by one writer at a time and emptied only through `&mut`)
//! and lay it over the committed bitmap, so they see a sector as present
//! only once its data is written.
//!
//! A copy stays after a shared flush commits it (then clean): the cache of
//! committed bitmaps may hold the page as it was, and only `&mut` may
//! forget a cached chunk. Every `&mut` use of the bitmaps first takes the
//! copies back ([`SharedBits::take`]): the changed ones become the image's
//! uncommitted pages, the clean ones' chunks are dropped from the cache.
//! The number of copies is bounded; when it is reached, writers take the
//! exclusive path, whose flush empties the table.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::diff::{bitmap_runs, run_masks};

/// Bytes of a bitmap page.
const PAGE: usize = 4096;
/// Pages held at most (a megabyte of copies).
const SLOTS: usize = 256;
/// Buckets of the lookup table: twice the slots, so a probe always ends
/// at an empty one.
const BUCKETS: usize = 2 * SLOTS;

/// One page's copy.
pub(crate) struct BitsPage {
    /// The page's file offset.
    pub(crate) at: u64,
    /// The sector bitmap chunk the page belongs to.
    pub(crate) chunk: u64,
    bytes: Box<[AtomicU8]>,
    /// Changed since the last commit.
    dirty: AtomicBool,
}

impl BitsPage {
    /// Copies the page's bytes from byte `from` into `out` (as many as it
    /// holds).
    fn copy_into(&self, from: usize, out: &mut [u8]) {
        for (o, b) in out.iter_mut().zip(&self.bytes[from..]) {
            // Acquire: a bit seen set means the sectors' data was written
            // before it (the writer stored with Release).
            *o = b.load(Ordering::Acquire);
        }
    }

    /// The page's bytes now.
    pub(crate) fn snapshot(&self) -> Vec<u8> {
        let mut out = alloc::vec![0u8; PAGE];
        self.copy_into(0, &mut out);
        out
    }
}

/// The copies (see the [module docs](self)); the table is made on first
/// use, so an image never changed through `&self` pays nothing for it.
#[derive(Default)]
pub(crate) struct SharedBits {
    table: OnceLock<Table>,
}

struct Table {
    /// Per bucket, 0 when empty, else 1 + the slot of the page hashed there.
    buckets: Box<[AtomicU32]>,
    slots: Box<[OnceLock<BitsPage>]>,
    /// Slots filled, in order; only a writer holding the image's allocation
    /// lock adds one.
    count: AtomicUsize,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            count: AtomicUsize::new(0),
        }
    }
}

/// The 4 KiB pages that bytes `[at, end)` of the file fall in (none for
/// an empty range).
fn pages(at: u64, end: u64) -> impl Iterator<Item = u64> {
    let start = if at < end { at / PAGE as u64 * PAGE as u64 } else { end };
    (start..end).step_by(PAGE)
}

fn bucket_of(at: u64) -> usize {
    ((at / PAGE as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) as usize % BUCKETS
}

impl SharedBits {
    /// Whether no page is held (the common case, one load).
    pub(crate) fn is_empty(&self) -> bool {
        self.table.get().is_none_or(|t| t.count.load(Ordering::Acquire) == 0)
    }

    /// The copy of the page at file offset `at` (a multiple of 4096).
    pub(crate) fn get(&self, at: u64) -> Option<&BitsPage> {
        let t = self.table.get()?;
        if t.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut b = bucket_of(at);
        loop {
            let v = t.buckets[b].load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            let page = t.slots[v as usize - 1].get()?;
            if page.at == at {
                return Some(page);
            }
            b = (b + 1) % BUCKETS;
        }
    }

    /// Whether a copy covers any byte of `[at, end)`.
    pub(crate) fn any_in(&self, at: u64, end: u64) -> bool {
        !self.is_empty() && pages(at, end).any(|page| self.get(page).is_some())
    }

    /// Lays the copies over `out`, the bytes at file offset `at`.
    pub(crate) fn overlay(&self, at: u64, out: &mut [u8]) {
        if self.is_empty() {
            return;
        }
        let end = at + out.len() as u64;
        for page in pages(at, end) {
            if let Some(p) = self.get(page) {
                let lo = page.max(at);
                let hi = (page + PAGE as u64).min(end);
                p.copy_into((lo - page) as usize, &mut out[(lo - at) as usize..(hi - at) as usize]);
            }
        }
    }

    /// Holds a copy of the page at `at` of chunk `chunk`, made by `load`
    /// (its bytes as the disk presents them now) unless held already.
    /// `Ok(false)` when every slot is taken. Only one caller at a time (the
    /// image's allocation lock).
    pub(crate) fn hold(
        &self,
        at: u64,
        chunk: u64,
        load: impl FnOnce() -> crate::Result<Vec<u8>>,
    ) -> crate::Result<bool> {
        if self.get(at).is_some() {
            return Ok(true);
        }
        let t = self.table.get_or_init(Table::default);
        let n = t.count.load(Ordering::Acquire);
        if n == SLOTS {
            return Ok(false);
        }
        let bytes = load()?;
        debug_assert_eq!(bytes.len(), PAGE);
        let page = BitsPage { at, chunk, bytes: bytes.into_iter().map(AtomicU8::new).collect(), dirty: false.into() };
        if t.slots[n].set(page).is_err() {
            return Err(crate::Error::invalid("a shared bitmap slot was filled twice"));
        }
        let mut b = bucket_of(at);
        while t.buckets[b].load(Ordering::Acquire) != 0 {
            b = (b + 1) % BUCKETS;
        }
        t.buckets[b].store(n as u32 + 1, Ordering::Release);
        t.count.store(n + 1, Ordering::Release);
        Ok(true)
    }

    /// Sets bits `[first, first + count)` counted from file offset `base`
    /// (bit 0 of the byte there); `false`, setting none, when a page they
    /// fall in is not held. Call after the sectors' data is written; one
    /// caller at a time.
    pub(crate) fn set_bits(&self, base: u64, first: u64, count: u64) -> bool {
        if bitmap_runs(base, first, count).any(|(page_at, _, _)| self.get(page_at).is_none()) {
            return false;
        }
        for (page_at, s, stop) in bitmap_runs(base, first, count) {
            let page = self.get(page_at).expect("checked above");
            let mut changed = false;
            for (i, mask) in run_masks(base, page_at, s, stop) {
                // Release: whoever sees the bit sees the data written before.
                changed |= page.bytes[i].fetch_or(mask, Ordering::Release) & mask != mask;
            }
            if changed {
                page.dirty.store(true, Ordering::Release);
            }
        }
        true
    }

    /// Whether a held page changed since it was last committed.
    pub(crate) fn has_dirty(&self) -> bool {
        self.held().any(|p| p.dirty.load(Ordering::Acquire))
    }

    /// The changed pages, as (file offset, bytes): what a shared flush
    /// commits. (The caller keeps writers out until [`Self::committed`].)
    pub(crate) fn dirty_pages(&self) -> Vec<(u64, Vec<u8>)> {
        self.held().filter(|p| p.dirty.load(Ordering::Acquire)).map(|p| (p.at, p.snapshot())).collect()
    }

    /// The pages [`Self::dirty_pages`] gave are committed.
    pub(crate) fn committed(&self, pages: &[(u64, Vec<u8>)]) {
        for (at, _) in pages {
            if let Some(p) = self.get(*at) {
                p.dirty.store(false, Ordering::Release);
            }
        }
    }

    fn held(&self) -> impl Iterator<Item = &BitsPage> {
        let slots = match self.table.get() {
            Some(t) => &t.slots[..t.count.load(Ordering::Acquire)],
            None => &[],
        };
        slots.iter().filter_map(|s| s.get())
    }

    /// Empties the table: each page as (file offset, chunk, bytes, changed).
    pub(crate) fn take(&mut self) -> Vec<(u64, u64, Vec<u8>, bool)> {
        if self.is_empty() {
            return Vec::new();
        }
        let out = self.held().map(|p| (p.at, p.chunk, p.snapshot(), p.dirty.load(Ordering::Acquire))).collect();
        *self = SharedBits::default();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_found_overlaid_changed_and_taken_back() {
        let bits = SharedBits::default();
        assert!(bits.is_empty() && !bits.any_in(0, u64::MAX));
        // Pages that hash anywhere: every one is found again, none twice.
        for i in 0..SLOTS as u64 {
            let at = (1 << 20) + i * 7 * PAGE as u64;
            assert!(bits.hold(at, i, || Ok(alloc::vec![i as u8; PAGE])).unwrap());
            // Held already: not loaded again.
            assert!(bits.hold(at, i, || panic!("loaded twice")).unwrap());
        }
        assert!(!bits.hold(1 << 40, 0, || Ok(alloc::vec![0; PAGE])).unwrap(), "no slot left");
        for i in 0..SLOTS as u64 {
            let at = (1 << 20) + i * 7 * PAGE as u64;
            assert_eq!(bits.get(at).unwrap().chunk, i);
            assert!(bits.get(at + PAGE as u64).is_none());
        }
        assert!(!bits.has_dirty());
        // Bits 3..13 of byte 10 of the first page, which held 0s.
        let at = 1 << 20;
        assert!(bits.set_bits(at + 10, 3, 10));
        assert!(!bits.set_bits(at - 10, 3, 100), "a page not held");
        assert!(!bits.set_bits(at + 4090, 0, 100), "runs into a page not held");
        let mut out = [0xAAu8; 8];
        bits.overlay(at + 8, &mut out);
        assert_eq!(out, [0, 0, 0b1111_1000, 0b0001_1111, 0, 0, 0, 0]);
        // A range across the start of the page keeps the bytes before it.
        let mut out = [0xAAu8; 4];
        bits.overlay(at - 2, &mut out);
        assert_eq!(out, [0xAA, 0xAA, 0, 0]);
        assert!(bits.any_in(at - 2, at + 1) && !bits.any_in(at - 2, at));
        assert!(bits.has_dirty());
        let pages = bits.dirty_pages();
        assert_eq!(pages.len(), 1);
        assert_eq!(pages[0].1[10..12], [0b1111_1000, 0b0001_1111]);
        bits.committed(&pages);
        assert!(!bits.has_dirty());
        let mut bits = bits;
        let taken = bits.take();
        assert_eq!(taken.len(), SLOTS);
        assert!(taken.iter().all(|t| !t.3));
        assert!(bits.is_empty() && bits.get(at).is_none());
    }

    #[test]
    fn bits_across_two_pages() {
        let bits = SharedBits::default();
        let at = 8 * PAGE as u64;
        for p in [at, at + PAGE as u64] {
            assert!(bits.hold(p, 0, || Ok(alloc::vec![0; PAGE])).unwrap());
        }
        // From bit 5 of the page's last byte to bit 2 of the next page's
        // second byte: 3 + 8 + 3 bits.
        assert!(bits.set_bits(at + 4095, 5, 14));
        let mut out = [0u8; 4];
        bits.overlay(at + 4094, &mut out);
        assert_eq!(out, [0, 0b1110_0000, 0xFF, 0b0000_0111]);
        assert_eq!(bits.dirty_pages().len(), 2);
    }
}
