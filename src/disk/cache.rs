//! A shared cache of sector bitmap blocks for the read path.
//!
//! Reads of partially present blocks need a few bitmap bytes; fetching them
//! from the file on every request costs a system call per block per level of
//! a chain. With `std` the committed 1 MiB bitmap blocks are cached behind a
//! read-write lock (readers share it; a miss takes the write lock briefly),
//! bounded in count. Without `std` there is no lock to share, and bitmaps are
//! read per request. Uncommitted bitmap pages are not cached: the disk
//! overlays them, and commits clear the cache.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::error::Result;

/// Bitmap blocks kept at most (1 MiB each).
#[cfg(feature = "std")]
const MAX_BLOCKS: usize = 128;

#[derive(Default)]
pub(crate) struct BitmapCache {
    #[cfg(feature = "std")]
    blocks: std::sync::RwLock<alloc::collections::BTreeMap<u64, Arc<[u8]>>>,
}

impl BitmapCache {
    /// The committed bitmap block at `offset`, loaded by `load` on a miss.
    /// Without `std` every call loads.
    pub(crate) fn get(&self, offset: u64, load: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<[u8]>> {
        #[cfg(feature = "std")]
        {
            if let Some(b) = self.blocks.read().unwrap_or_else(|p| p.into_inner()).get(&offset) {
                return Ok(Arc::clone(b));
            }
            let block: Arc<[u8]> = load()?.into();
            let mut map = self.blocks.write().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_BLOCKS {
                map.clear();
            }
            map.insert(offset, Arc::clone(&block));
            Ok(block)
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = offset;
            Ok(load()?.into())
        }
    }

    /// Forgets everything (after metadata reached the file).
    pub(crate) fn clear(&self) {
        #[cfg(feature = "std")]
        self.blocks.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
